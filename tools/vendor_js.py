"""Vendor the website's JavaScript from the npm registry, so the book works offline.

    python tools/vendor_js.py [--dest _vendor] [--force]

A default Jupyter Book page fetches MathJax, require.js and the ipywidgets
manager (@jupyter-widgets/html-manager) from CDNs: offline, the maths stays raw
and the widgets stay blank. This script fetches pinned versions of the three
packages with `npm pack` (the ordinary npm client, checked against the
registry's sha512), unpacks the few files the site needs and writes them to

    _vendor/static/mathjax/tex-chtml.js (+ fonts, extensions)
    _vendor/static/require/require.js
    _vendor/static/html-manager/embed-amd.js (+ its fonts)
    _vendor/static/widgets-offline.js  (see tools/widgets_offline.js)

`_config.yml` lists `_vendor/static` in `html_static_path` (Sphinx copies it to
`_build/html/_static/`) and points `mathjax_path` and `nb_ipywidgets_js` there.
The folder is not the book's own `_static`: Jupyter Book adds a <script> tag
for every .js under a source `_static` folder, which would load MathJax twice.

The result is built, not committed (`/_vendor/` is in .gitignore); a stamp file
`_vendor/static/VERSIONS.json` records what was vendored, and the script does
nothing when it already matches (pass --force to fetch again).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name@version -> the registry's sha512 integrity (npm view NAME@VERSION dist.integrity)
PACKAGES = {
    "mathjax@3.2.2": "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
    "requirejs@2.3.8": "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
    # 1.x is the manager for ipywidgets 8 (widget state with controls 2.0.0)
    "@jupyter-widgets/html-manager@1.0.15": "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
}

# files of each package the site needs: (path inside the tarball, destination under static/)
MATHJAX_KEEP = ("tex-chtml.js", "input/", "output/chtml", "ui/", "a11y/", "sre/", "adaptors/")
SHIM = ROOT / "tools" / "widgets_offline.js"


def integrity(path: Path) -> str:
    """The npm-style `sha512-<base64>` digest of a file."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def npm_pack(spec: str, dest: Path) -> Path:
    """Download `spec` (name@version) as a tarball into `dest` with `npm pack`; check its sha512."""
    if shutil.which("npm") is None:
        raise SystemExit("error: npm not found; install Node.js (e.g. `apt-get install -y npm`) and run again")
    out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(dest)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: `npm pack {spec}` failed:\n{out.stderr.strip()}")
    tgz = dest / json.loads(out.stdout)[0]["filename"]
    got = integrity(tgz)
    if got != PACKAGES[spec]:
        raise SystemExit(f"error: {spec} from the registry has {got}, expected {PACKAGES[spec]}")
    return tgz


def unpack(tgz: Path, dest: Path) -> Path:
    """Unpack an npm tarball into `dest`; return its `package/` folder."""
    with tarfile.open(tgz) as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def copy_mathjax(pkg: Path, static: Path) -> None:
    """MathJax 3: the TeX+CHTML bundle and the pieces it loads on demand (fonts, extensions, menu)."""
    for item in MATHJAX_KEEP:
        src = pkg / "es5" / item
        dst = static / "mathjax" / item
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def copy_widgets(pkg: Path, static: Path) -> None:
    """The widget manager's AMD bundle and the fonts it loads from its own folder."""
    dst = static / "html-manager"
    dst.mkdir(parents=True)
    for f in (pkg / "dist").iterdir():
        if f.name == "embed-amd.js" or f.suffix in {".woff", ".woff2", ".ttf", ".eot", ".svg"}:
            shutil.copy2(f, dst / f.name)


def copy_notices(pkg: Path, dst: Path) -> None:
    """Keep each package's package.json (name, version, licence) and LICENSE file, if any."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "LICENSE", "LICENSE.md"):
        if (pkg / name).exists():
            shutil.copy2(pkg / name, dst / name)


def build(dest: Path) -> None:
    """Fetch every package and write `dest/static`, replacing it in one rename."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        tmp = Path(tmp)
        static = tmp / "static"
        static.mkdir()
        pkgs = {}
        for spec in PACKAGES:
            name = spec.rsplit("@", 1)[0]
            pkgs[name] = unpack(npm_pack(spec, tmp), tmp / name.replace("/", "_"))
        copy_mathjax(pkgs["mathjax"], static)
        (static / "require").mkdir()
        shutil.copy2(pkgs["requirejs"] / "require.js", static / "require" / "require.js")
        copy_widgets(pkgs["@jupyter-widgets/html-manager"], static)
        for folder, name in (("mathjax", "mathjax"), ("require", "requirejs"),
                             ("html-manager", "@jupyter-widgets/html-manager")):
            copy_notices(pkgs[name], static / folder)
        shutil.copy2(SHIM, static / SHIM.name.replace("_", "-"))
        (static / "VERSIONS.json").write_text(json.dumps(PACKAGES, indent=1) + "\n")
        old = dest / "static"
        if old.exists():
            shutil.rmtree(old)
        static.rename(old)


def up_to_date(dest: Path) -> bool:
    """True when `dest/static` holds exactly the pinned packages and the current shim."""
    stamp = dest / "static" / "VERSIONS.json"
    shim = dest / "static" / SHIM.name.replace("_", "-")
    return (stamp.exists() and json.loads(stamp.read_text()) == PACKAGES
            and shim.exists() and shim.read_bytes() == SHIM.read_bytes())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", type=Path, default=ROOT / "_vendor", help="output folder (default: _vendor)")
    p.add_argument("--force", action="store_true", help="fetch again even when up to date")
    args = p.parse_args(argv)
    if up_to_date(args.dest) and not args.force:
        print(f"{args.dest / 'static'} is up to date")
        return 0
    build(args.dest)
    print(f"vendored {', '.join(PACKAGES)} into {args.dest / 'static'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
