"""Build and install Detectron2 v0.6 from the registry's ``pb1-detectron2==0.6`` sdist.

The sdist ships detectron2 v0.6's Python sources but not its C++/CUDA sources, and its
``setup.py`` compiles them unconditionally and misses the model-zoo configs it ships. This
script downloads the sdist, rewrites those two parts of ``setup.py`` (no compiled extension;
``detectron2/model_zoo/configs/**`` as package data) and installs the result into the running
interpreter's environment without dependencies (``requirements/base.txt`` pins those).
What the missing extension provided is covered at run time by ``panoptic_curriculum.compat``.

Usage: python scripts/build_detectron2.py [--workdir DIR]
"""

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"

# (text in the sdist's setup.py, replacement); each must occur exactly once.
SETUP_PATCHES = [
    ("    ext_modules=get_extensions(),\n", "    ext_modules=[],\n"),
    (
        '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n',
        "",
    ),
    (
        '    package_data={"detectron2.model_zoo": get_model_zoo_configs()},\n',
        '    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},\n',
    ),
]


def _run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def patch_setup(path: str) -> None:
    with open(path) as f:
        text = f.read()
    for old, new in SETUP_PATCHES:
        count = text.count(old)
        if count != 1:
            raise RuntimeError(
                f"{path}: expected exactly one occurrence of {old.strip()!r}, found {count}; "
                f"is this the {SDIST} sdist?"
            )
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where to download and unpack")
    args = parser.parse_args()
    if args.workdir is None:
        # a temporary folder of its own, removed afterwards (the unpacked sdist is not needed
        # once installed)
        with tempfile.TemporaryDirectory(prefix="detectron2-build-") as workdir:
            build(workdir)
    else:
        os.makedirs(args.workdir, exist_ok=True)
        build(args.workdir)


def build(workdir: str) -> None:
    """Download the sdist into ``workdir`` (unless it is there), patch and install it."""
    pip = [sys.executable, "-m", "pip"]
    sdist = os.path.join(workdir, SDIST_FILE)
    if not os.path.isfile(sdist):
        # --no-build-isolation: the sdist's setup.py imports torch to prepare its metadata.
        _run(
            pip
            + [
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                SDIST,
                "-d",
                workdir,
            ]
        )
    src = os.path.join(workdir, "src")
    with tarfile.open(sdist) as tar:
        tar.extractall(src, filter="data")
    root = os.path.join(src, SDIST_FILE[: -len(".tar.gz")])
    patch_setup(os.path.join(root, "setup.py"))
    configs = os.path.join(root, "detectron2", "model_zoo", "configs")
    if not os.path.isdir(configs):
        raise RuntimeError(f"{configs} is missing from the sdist")
    _run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", root])


if __name__ == "__main__":
    main()
