#version 330 core
// One triangle that covers the viewport; v_ndc is the pixel's normalised device position.
out vec2 v_ndc;

void main() {
    vec2 corner = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    v_ndc = corner;
    gl_Position = vec4(corner, 0.0, 1.0);
}
