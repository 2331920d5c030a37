"""Where tests find shared data.

The hh-rlhf harmless slice lives in ``../shared/data/`` beside the repository (1,156 pairs).
A clone without it falls back to the first 64 pairs vendored in ``tests/data/`` (same MIT
licence, ``tests/data/hh_rlhf_LICENSE.txt``). ``$CAI_HH_RLHF`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SHARED = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_test_dev.jsonl"
_VENDORED = ROOT / "tests" / "data" / "hh_rlhf_slice.jsonl"

HH_RLHF = Path(os.environ.get("CAI_HH_RLHF") or (_SHARED if _SHARED.is_file() else _VENDORED))
