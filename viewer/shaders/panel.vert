#version 330 core
// A quad in the world, corners from gl_VertexID (triangle strip of four).
uniform mat4 u_clip_from_world;
uniform vec3 u_center;
uniform vec3 u_half_right;      // half the panel width along its right edge, metres
uniform vec3 u_half_up;
out vec2 v_uv;

void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float((gl_VertexID >> 1) & 1));
    v_uv = vec2(corner.x, 1.0 - corner.y);
    vec3 world = u_center + (corner.x * 2.0 - 1.0) * u_half_right + (corner.y * 2.0 - 1.0) * u_half_up;
    gl_Position = u_clip_from_world * vec4(world, 1.0);
}
