"""YAML run configuration: validation errors name the file and the key."""
import textwrap

import pytest
from ase.build import bulk
from ase.io import write

from biasserver.config import ConfigError, load

GOOD = """
structure: init.xyz
symmetry:
  default: {cutoff: 4.0}
bias:
  height: 0.002
  width: 0.5
  stride: 5
  species: {Si: 1.0}
server:
  mode: proxy
  ipi: unix:test-ipi
  listen: unix:test-ref
recorder:
  path: frames.extxyz
"""


@pytest.fixture
def folder(tmp_path):
    write(tmp_path / "init.xyz", bulk("Si", "diamond", 5.43, cubic=True), format="extxyz")
    return tmp_path


def write_config(folder, text):
    path = folder / "gmetad.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_config_resolves_paths_and_builds_the_bias(folder):
    config = load(write_config(folder, GOOD))
    assert config.structure == str(folder / "init.xyz")
    assert config.recorder.path == str(folder / "frames.extxyz")
    assert config.bias.hills_file == str(folder / "HILLS")
    assert config.symmetry == {"default": {"cutoff": 4.0, "elements": ["Si"]}}
    bias = config.make_bias()
    assert bias.stride == 5 and bias.species == {"Si": 1.0}
    assert (folder / "HILLS").exists()
    bias.close()


def test_restart_continues_and_no_restart_keeps_old_hills_aside(folder):
    path = write_config(folder, GOOD)
    config = load(path)
    bias = config.make_bias()
    bias.deposit(bulk("Si", "diamond", 5.43, cubic=True).copy())
    bias.close()
    again = config.make_bias()
    assert again.n_hills == 8
    again.close()
    config.bias.restart = False
    fresh = config.make_bias()
    assert fresh.n_hills == 0
    assert (folder / "HILLS.1").exists()
    fresh.close()


@pytest.mark.parametrize("change,message", [
    ("bias:\n  height: high\n", "'bias.height' must be float"),
    ("bias:\n  heigth: 0.1\n", "unknown key 'bias.heigth'"),
    ("server:\n  mode: relay\n", "'server.mode' must be 'proxy' or 'bias'"),
    ("bias:\n  covariance: diagonal\n", "'bias.covariance'"),
    ("bias:\n  species: {Ge: 1.0}\n", "'Ge'"),
    ("bias:\n  stride: 0\n", "stride"),
    ("extra: 1\n", "unknown key 'extra'"),
    ("symmetry:\n  default: {cutoff: -1.0}\n", "cutoff"),
])
def test_errors_name_the_key(folder, change, message):
    text = GOOD
    section = change.split(":")[0]
    if section in ("bias", "server", "symmetry"):
        # replace the whole section by the faulty one
        lines, out, skip = text.splitlines(), [], False
        for line in lines:
            if line.startswith(section + ":"):
                skip = True
                continue
            if skip and line.startswith("  "):
                continue
            skip = False
            out.append(line)
        text = "\n".join(out) + "\n" + change
    else:
        text = text + change
    path = write_config(folder, text)
    with pytest.raises(ConfigError, match="gmetad.yaml") as info:
        load(path)
    assert message in str(info.value)


def test_missing_structure_and_bad_yaml(folder):
    path = write_config(folder, GOOD.replace("init.xyz", "nowhere.xyz"))
    with pytest.raises(ConfigError, match="nowhere.xyz not found"):
        load(path)
    path.write_text("bias: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(path)
