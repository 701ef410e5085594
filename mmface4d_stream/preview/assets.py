"""Where the preview page's files are, and whether the vendored three.js has been built.

The page's own files (``web/static/index.html``, ``preview.js``, ``preview.css``) are part of the
package. three.js comes from the npm registry: ``tools/build_preview_assets.sh`` installs the
version pinned in ``web/package.json`` and copies the three modules the page imports into
``web/static/vendor/`` (not committed). Nothing is loaded from a CDN at run time.
"""

from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
VENDOR_FILES = ("three.module.js", "three.core.js", "OrbitControls.js")
PAGE_FILES = ("index.html", "preview.js", "preview.css")
BUILD_COMMAND = "tools/build_preview_assets.sh"


def missing_assets(static_dir: Path = STATIC_DIR) -> list[str]:
    """Paths (relative to `static_dir`) of the page files that are absent; empty when complete."""
    static_dir = Path(static_dir)
    wanted = list(PAGE_FILES) + [f"vendor/{name}" for name in VENDOR_FILES]
    return [name for name in wanted if not (static_dir / name).is_file()]


def missing_assets_message(missing: list[str], static_dir: Path = STATIC_DIR) -> str:
    """One sentence saying what is missing and how to build it."""
    return (
        f"the preview page's assets are not built ({', '.join(missing)} missing under {static_dir}): "
        f"run {BUILD_COMMAND} (needs npm and the npm registry once)"
    )
