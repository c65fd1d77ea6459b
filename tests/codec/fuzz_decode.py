"""The long fuzz run of the ``.gsv`` decoder, for ``make fuzz`` (pytest does not collect this file).

It runs the four hypothesis properties of ``test_hostile.py`` (random bytes, edited payloads,
edited decompressed streams, random header fields), each with far more examples than ``make test``
and a fresh random seed, printed so a run can be repeated. Every example must decode to valid,
finite splats or raise ``CodecError``; anything else stops the run with the failing input.

Environment:
    GSV_FUZZ_EXAMPLES  examples in all, split evenly between the properties (default 200000,
                       10-20 minutes on a 2-core machine)
    GSV_FUZZ_SEED      the seed to use (default: a random one)

Usage: ``.venv/bin/python tests/codec/fuzz_decode.py`` (or ``make fuzz``).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import codec_cases as C  # noqa: E402
from hypothesis import given, seed  # noqa: E402


def main() -> int:
    total = int(os.environ.get("GSV_FUZZ_EXAMPLES", "200000"))
    seed_value = int(os.environ.get("GSV_FUZZ_SEED") or random.randrange(2**32))
    strategies = {
        "random bytes": C.random_bytes(),
        "edited payloads": C.mutated_payloads(),
        "edited streams": C.raw_mutated_payloads(),
        "random header fields": C.header_payloads(),
    }
    each = max(1, total // len(strategies))
    print(f"fuzzing decode(): {each} examples x {len(strategies)} properties, seed {seed_value}")
    print(f"(repeat with GSV_FUZZ_SEED={seed_value} GSV_FUZZ_EXAMPLES={total})", flush=True)
    start = time.perf_counter()
    for name, strategy in strategies.items():

        @seed(seed_value)
        @C.fuzz_settings(each)
        @given(strategy)
        def prop(data: bytes) -> None:
            C.decode_checked(data)

        t = time.perf_counter()
        prop()
        print(f"  {name}: {each} examples, {time.perf_counter() - t:.0f} s, no failure", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
