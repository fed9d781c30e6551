#version 330 core
//#include srgb.frag
// Neutral grey with one validation target: a dark disc with a light centre (the eye settles on the centre).
in vec2 v_ndc;
out vec4 frag_color;

uniform mat3 u_rotation;        // world <- eye
uniform vec4 u_tangents;        // left, right, bottom, top
uniform vec3 u_target;          // unit direction of the target, world frame
uniform vec2 u_cos_radii;       // cosines of the outer and inner angular radii
uniform vec3 u_grey;            // linear

void main() {
    vec2 s = v_ndc * 0.5 + 0.5;
    vec3 eye = vec3(mix(u_tangents.x, u_tangents.y, s.x), mix(u_tangents.z, u_tangents.w, s.y), -1.0);
    float c = dot(normalize(u_rotation * eye), u_target);
    // one pixel of antialiasing at each edge, from the screen-space change of the cosine
    float w = max(fwidth(c), 1e-7);
    float outer = smoothstep(u_cos_radii.x - w, u_cos_radii.x + w, c);
    float inner = smoothstep(u_cos_radii.y - w, u_cos_radii.y + w, c);
    vec3 color = mix(u_grey, vec3(0.0), outer);
    color = mix(color, vec3(1.0), inner);
    frag_color = vec4(srgb_encode(color), 1.0);
}
