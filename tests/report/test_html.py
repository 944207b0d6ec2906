"""``report.html``'s pieces: the histogram, the page's order, escaping, that it is self-contained
and deterministic."""
from __future__ import annotations

import re

import numpy as np

from fapm_lib.decisions.calibration import Calibration
from fapm_lib.report.html import ReportImage, data_uri, histogram_svg, render_report


def picture(value: int) -> np.ndarray:
    return np.full((30, 40, 3), value, dtype=np.uint8)


def images() -> list[ReportImage]:
    return [ReportImage("good/1.png", picture(10), 3.0, 0.2, "OK", "good"),
            ReportImage("crack/<b>.png", picture(200), 9.5, 0.99, "NG", "crack", picture(90), "layer 2 ..."),
            ReportImage("good/2.png", data_uri(picture(50), "JPEG"), 5.0, 0.6, "NG", "good")]


def calibration() -> Calibration:
    return Calibration(4.5, 0.5, 3.0, 0.4, summary={"image": {"values": [1.0, 2.0, 2.5, 3.0, 4.0]}})


def test_histogram_has_one_bar_per_bin_the_threshold_and_a_tick_per_image() -> None:
    svg = histogram_svg([1.0, 2.0, 2.5, 3.0, 4.0], 4.5, images(), bins=4)
    assert svg.count("<rect") == 4 and "threshold 4.500" in svg
    assert len(re.findall(r'<line x1="[\d.]+" y1="\d+" x2="[\d.]+" y2="\d+" stroke="#(2e7d32|c62828)" '
                          r'stroke-width="2"><title>', svg)) == 3
    assert "crack/&lt;b&gt;.png" in svg


def test_page_sorts_by_score_escapes_names_and_inlines_every_picture() -> None:
    page = render_report("a <title>", images(), calibration(), {"model file": "m.safetensors"}, {"image_auroc": 0.5})
    names = re.findall(r'<figure class="thumb"><img src="data:image/jpeg;base64,[^"]+" alt="([^"]+)"', page)
    assert names == ["crack/&lt;b&gt;.png", "good/2.png", "good/1.png"]
    assert page.count("<img ") == 4 and page.count('src="data:image/') == 4  # 3 thumbnails, 1 explanation
    assert "3 images: 2 NG, 1 OK; image threshold 4.500" in page and "a &lt;title&gt;" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "<script" not in page and "<link" not in page
    assert page == render_report("a <title>", images(), calibration(), {"model file": "m.safetensors"},
                                 {"image_auroc": 0.5})


def test_an_uncalibrated_page_says_so() -> None:
    page = render_report("r", images()[:1], None, {})
    assert "1 images, uncalibrated (raw scores only)" in page and "threshold" not in page.split("<h2>Settings")[0]
