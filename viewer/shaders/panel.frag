#version 330 core
//#include srgb.frag
in vec2 v_uv;
out vec4 frag_color;

uniform sampler2D u_panel;      // sRGB texture drawn by Pillow, row 0 at the top

void main() {
    frag_color = vec4(srgb_encode(texture(u_panel, v_uv).rgb), 1.0);
}
