"""Equirectangular images with Google Photo Sphere (GPano) XMP metadata.

Viewers and photo sites (Google Photos, Facebook, Kuula, Photo Sphere Viewer, ...) recognise a 360° panorama by
the GPano XMP properties, not by its 2:1 shape. PNG carries XMP in an ``iTXt`` chunk keyed
``XML:com.adobe.xmp``; JPEG in an APP1 segment, which Pillow writes from ``save(..., xmp=...)``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from study.errors import StimulusError

GPANO_NS = "http://ns.google.com/photos/1.0/panorama/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
PNG_XMP_KEY = "XML:com.adobe.xmp"
JPEG_SUFFIXES = (".jpg", ".jpeg")


def gpano_xmp(width: int, height: int) -> str:
    """The XMP packet declaring a full (uncropped) equirectangular panorama of ``width`` × ``height`` pixels."""
    properties = {
        "ProjectionType": "equirectangular",
        "UsePanoramaViewer": "True",
        "FullPanoWidthPixels": width,
        "FullPanoHeightPixels": height,
        "CroppedAreaImageWidthPixels": width,
        "CroppedAreaImageHeightPixels": height,
        "CroppedAreaLeftPixels": 0,
        "CroppedAreaTopPixels": 0,
    }
    attributes = "\n".join(f'    GPano:{key}="{value}"' for key, value in properties.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
        f'  <rdf:Description rdf:about="" xmlns:GPano="{GPANO_NS}"\n{attributes}/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


def save_panorama(image: np.ndarray, path: str | Path, quality: int = 95) -> Path:
    """Write an equirectangular (H, 2H, 3) uint8 image as PNG or JPEG with GPano XMP.

    Raises
    ------
    StimulusError
        If the image is not 2:1 RGB uint8 or the suffix is neither .png nor .jpg/.jpeg (checked before writing).
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", *JPEG_SUFFIXES):
        raise StimulusError(f"{path}: panoramas are written as .png, .jpg or .jpeg; change the file name")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[1] != 2 * image.shape[0]:
        raise StimulusError(
            f"{path}: expected a 2:1 (H, 2H, 3) uint8 panorama, got shape {image.shape} dtype {image.dtype}"
        )
    height, width = image.shape[:2]
    packet = gpano_xmp(width, height)
    picture = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        info = PngInfo()
        info.add_itxt(PNG_XMP_KEY, packet)
        picture.save(path, pnginfo=info)
    else:
        picture.save(path, quality=quality, xmp=packet.encode("utf-8"))
    return path


def read_gpano(path: str | Path) -> dict[str, str]:
    """The GPano properties of an image file (``{}`` when it has no GPano XMP), e.g. ``{"ProjectionType": ...}``."""
    from PIL import Image

    with Image.open(path) as picture:
        packet = picture.info.get(PNG_XMP_KEY) or picture.info.get("xmp")
    if not packet:
        return {}
    if isinstance(packet, bytes):
        packet = packet.decode("utf-8", errors="replace")
    start, end = packet.find("<x:xmpmeta"), packet.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    root = ET.fromstring(packet[start : end + len("</x:xmpmeta>")])
    found: dict[str, str] = {}
    for element in root.iter():
        for key, value in element.attrib.items():
            if key.startswith(f"{{{GPANO_NS}}}"):
                found[key.split("}", 1)[1]] = value
        if element.tag.startswith(f"{{{GPANO_NS}}}") and element.text:
            found[element.tag.split("}", 1)[1]] = element.text.strip()
    return found
