"""Settings from the command line, config files and pack files: bad values and YAML hazards are refused
in one line naming the key."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT
from vnp.models.pack import load_pack
from vnp.support.errors import InputError


@pytest.mark.parametrize("override, expected", [
    ("threads=100000", "threads must be 0 (automatic) or 1.."),
    ("threads=-1", "threads must be 0"),
    ("dist.timeout_s=inf", "dist.timeout_s must be a positive number of seconds, got inf"),
    ("dist.timeout_s=nan", "dist.timeout_s must be a positive number of seconds, got nan"),
    ("chunk_length=2", "chunk_length must be at least 3 (one codon)"),
    ("chunk_length=-5", "chunk_length must be at least 3"),
])
def test_bad_settings_are_refused(override, expected):
    from vnp.support.config import load_config

    with pytest.raises(InputError, match=re.escape(expected)):
        load_config(None, [override])


YAML_HAZARDS = {
    "syntax": ("a: [\n", "line 2: invalid YAML"),
    "list": ("- 1\n- 2\n", "must be a mapping of keys, not a list"),
    "python_tag": ("threads: !!python/object/apply:os.system ['touch PWNED']\n", "could not determine a constructor"),
    "duplicate": ("threads: 1\nthreads: 2\n", "found duplicate key threads"),
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
                   "line 2: YAML aliases (*name) are not allowed"),
    "binary": (b"\xff\xfe\x00junk", "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(YAML_HAZARDS))
def test_yaml_hazards_in_a_config_or_pack_file(case, tmp_path, no_hang):
    from vnp.support.config import load_config

    text, expected = YAML_HAZARDS[case]
    path = tmp_path / "x.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"):
        load_config(str(path), [])
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: .*{re.escape(expected)}"):
        load_pack(str(path), classifier="c")
    assert not (ROOT / "PWNED").exists()
