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


def with_bias_lines(text: str, *lines: str) -> str:
    """GOOD with extra lines in its bias section."""
    return text.replace("  species: {Si: 1.0}\n", "  species: {Si: 1.0}\n" + "".join(f"  {x}\n" for x in lines))


def test_element_without_symmetry_functions_is_refused_on_load(folder):
    write(folder / "init.xyz", bulk("SiC", "zincblende", 4.36, cubic=True), format="extxyz")
    path = write_config(folder, GOOD.replace("default: {cutoff: 4.0}", "default: {elements: [Si], cutoff: 4.0}"))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "gmetad.yaml" in message and "'symmetry'" in message and "element C " in message
    assert "init.xyz" in message


@pytest.mark.parametrize("wall,words", [
    ("{kind: height, atoms: [3, 99], height: 2.0, k: 5.0}", ["'bias.walls[0]'", "[3, 99]", "0..7"]),
    ("{kind: height, atoms: Ge, height: 2.0, k: 5.0}", ["'bias.walls[0]'", "'Ge'"]),
    ("{kind: height, atoms: Si, reference: [-9], height: 2.0, k: 5.0}", ["'bias.walls[0]'", "[-9]"]),
    ("{kind: distance, min_distance: 1.5, k: 5.0, elements: [Si, H]}", ["'bias.walls[0]'", "'H'"]),
])
def test_walls_selecting_missing_atoms_are_refused_on_load(folder, wall, words):
    path = write_config(folder, with_bias_lines(GOOD, f"walls: [{wall}]"))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "gmetad.yaml" in message and "np.int64" not in message
    for word in words:
        assert word in message, message


def test_structure_that_is_not_a_structure_names_the_file(folder):
    (folder / "init.xyz").write_text("this is a note, not a structure\n")
    with pytest.raises(ConfigError) as info:
        load(write_config(folder, GOOD))
    assert str(folder / "init.xyz") in str(info.value) and "'structure'" in str(info.value)


def deposit_once(config) -> None:
    bias = config.make_bias()
    bias.deposit(bulk("Si", "diamond", 5.43, cubic=True))
    bias.close()


def test_hills_file_of_another_run_is_refused_unless_reused(folder):
    deposit_once(load(write_config(folder, GOOD)))
    # other bias parameters
    path = write_config(folder, GOOD.replace("height: 0.002", "height: 0.005"))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "'bias.hills_file'" in message and "HILLS" in message and "bias.height is 0.002 there, 0.005 here" in message
    # walls shape no hill: adding one is a continuation of the same run
    load(write_config(folder, with_bias_lines(GOOD, "walls: [{kind: distance, min_distance: 1.5, k: 5.0}]")))
    # another system with the same parameters
    write(folder / "init.xyz", bulk("Si", "diamond", 5.43, cubic=True) * (2, 1, 1), format="extxyz")
    with pytest.raises(ConfigError, match="deposited on Si8, this run is Si16"):
        load(write_config(folder, GOOD))
    # unless the YAML asks for it; the hills are then continued
    config = load(write_config(folder, with_bias_lines(GOOD, "reuse_hills: true")))
    bias = config.make_bias()
    assert bias.n_hills == 8
    bias.close()
    # or starts afresh with the old file kept aside
    config = load(write_config(folder, with_bias_lines(GOOD, "restart: false")))
    assert config.make_bias().n_hills == 0 and (folder / "HILLS.1").exists()
