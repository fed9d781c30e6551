#version 330 core
//#include srgb.frag
out vec4 frag_color;

uniform vec3 u_grey;            // linear

void main() {
    frag_color = vec4(srgb_encode(u_grey), 1.0);
}
