#version 330 core
//#include srgb.frag
in vec2 v_ndc;
out vec4 frag_color;

uniform sampler2D u_equirect;   // sRGB texture, mipmapped, REPEAT in s, CLAMP_TO_EDGE in t
uniform mat3 u_rotation;        // world <- eye
uniform vec4 u_tangents;        // left, right, bottom, top
uniform float u_fade;           // 0: the panorama, 1: only u_grey
uniform vec3 u_grey;            // linear

const float PI = 3.14159265358979;

void main() {
    vec2 s = v_ndc * 0.5 + 0.5;
    vec3 eye = vec3(mix(u_tangents.x, u_tangents.y, s.x), mix(u_tangents.z, u_tangents.w, s.y), -1.0);
    vec3 d = normalize(u_rotation * eye);
    vec2 uv = vec2(atan(d.x, -d.z) * (0.5 / PI) + 0.5, acos(clamp(d.y, -1.0, 1.0)) / PI);
    // Where atan wraps at ±180°, neighbouring pixels differ by ~1 in u and the GPU would pick the
    // coarsest mip (a one-pixel seam line); removing the whole turns gives the true footprint.
    vec2 dx = dFdx(uv);
    vec2 dy = dFdy(uv);
    dx.x -= round(dx.x);
    dy.x -= round(dy.x);
    vec3 color = textureGrad(u_equirect, uv, dx, dy).rgb;
    frag_color = vec4(srgb_encode(mix(color, u_grey, u_fade)), 1.0);
}
