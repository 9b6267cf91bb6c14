"""Coverage-guided fuzzing of the nvbox reader with atheris (``make fuzz``).

The harness is the one of reference/tests/test_fuzz.py: open the input
read-only, read every blob of the active directory and of every snapshot, run
``check_image``.  Anything but an ``NvboxError`` (or success) is a crash; atheris
reports it and writes the input as ``crash-*``.  Copy such inputs into
reference/tests/fuzz_regressions/ (with a .json note) so the tests replay them.

The corpus starts from the fuzz seeds (small valid images, 512-byte clusters);
the first bytes of an input of at most 8 bytes pick a seed and a few mutations
(the test's field-aware ones), everything else is taken as an image as is.

    python reference/fuzz/fuzz_open.py -max_total_time=600 -rss_limit_mb=512 -timeout=2 [corpus_dir]

atheris is not in the test extras by default: ``pip install atheris``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import nvbox  # noqa: F401
    from nvbox import _der, _format, _store, _tree, check, image, snapshots  # noqa: F401

import test_fuzz as tf  # noqa: E402

SEEDS = tf.seeds()


def one_input(data: bytes) -> None:
    key = None
    if len(data) <= 8:   # a tiny input names a seed and mutations: reach deep structures fast
        fdp = atheris.FuzzedDataProvider(data)
        si = fdp.ConsumeIntInRange(0, len(SEEDS) - 2)
        import random
        raw = tf.apply(si, tf.random_mutations(random.Random(fdp.ConsumeInt(4)), si))
    else:
        raw = data
        if raw[:1] == b"E":   # an encrypted image with the fuzz key
            raw, key = raw[1:], tf.FUZZ_KEY
    tf.exercise(raw, key)    # NvboxError is caught inside; anything else escapes to atheris


def write_seed_corpus(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    for name, raw in SEEDS:
        with open(os.path.join(path, f"seed-{name}"), "wb") as f:
            f.write((b"E" if name == "enc" else b"") + raw)


def main() -> None:
    argv = list(sys.argv)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        corpus = os.path.join(HERE, "corpus")
        argv.append(corpus)
        dirs = [corpus]
    write_seed_corpus(dirs[0])
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
