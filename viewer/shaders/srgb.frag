// Included (//#include srgb.frag) by the fragment shaders; named .frag so it ships with the package data.
// Eye buffers are plain RGBA8 (what the OpenVR compositor takes with ColorSpace_Gamma), so the shader
// writes sRGB-encoded values itself; textures are sRGB formats, so sampling and filtering are linear.
vec3 srgb_encode(vec3 linear) {
    vec3 c = clamp(linear, 0.0, 1.0);
    return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(vec3(0.0031308), c));
}
