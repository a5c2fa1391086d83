"""SIMPLE-NN parameter files: params_XX and potential_saved parsers, write_params.

Fixtures (tests/fixtures/simple_nn/), hand-written from design.md section 3:
- params_Si, params_C: a Si/C set (type indices 1 = Si, 2 = C) with G2 (some with
  Rs != 0 and other cutoffs), G4 and G5 rows;
- potential_saved: the same set in the LAMMPS-side format, each element block
  followed by scale1/scale2 vectors and NET/LAYER blocks as SIMPLE-NN writes them;
- params_Si_example: the method's 26-function Si set (8 G2 + 18 G4).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from biasserver.symmetry import ParameterFileError, SymmetryFunctions

FIXTURES = Path(__file__).parent / "fixtures" / "simple_nn"
PARAMS = {"Si": FIXTURES / "params_Si", "C": FIXTURES / "params_C"}
POTENTIAL = FIXTURES / "potential_saved"

# expected tables: kind, e1, e2 (0-based, -1 for G2), Rc, c1, c2, c3
EXPECTED_SI = np.array([
    [2, 0, -1, 6.0, 0.003214, 0.0, 0.0],
    [2, 0, -1, 6.0, 0.214264, 0.0, 0.0],
    [2, 1, -1, 6.0, 0.035711, 0.0, 0.0],
    [2, 1, -1, 5.0, 0.6, 2.4, 0.0],
    [2, 0, -1, 5.0, 1.2, 3.8, 0.0],
    [4, 0, 0, 6.0, 0.000357, 1.0, -1.0],
    [4, 0, 1, 6.0, 0.028569, 2.0, 1.0],
    [4, 1, 1, 6.0, 0.089277, 4.0, -1.0],
    [5, 0, 1, 5.5, 0.01, 1.0, 1.0],
    [5, 1, 1, 6.0, 0.005, 2.0, -1.0],
])
EXPECTED_C = np.array([
    [2, 0, -1, 6.0, 0.035711, 0.0, 0.0],
    [2, 1, -1, 6.0, 0.071421, 0.0, 0.0],
    [2, 1, -1, 4.5, 0.9, 1.6, 0.0],
    [4, 0, 0, 6.0, 0.028569, 1.0, 1.0],
    [4, 0, 1, 6.0, 0.000357, 4.0, -1.0],
    [4, 1, 1, 5.0, 0.089277, 2.0, 1.0],
    [5, 0, 0, 6.0, 0.003, 1.0, -1.0],
    [5, 0, 1, 6.0, 0.02, 2.0, 1.0],
])


def structure():
    atoms = bulk("SiC", "zincblende", a=4.36, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=11)
    return atoms


def assert_same_values(a: SymmetryFunctions, b: SymmetryFunctions, atoms=None):
    atoms = structure() if atoms is None else atoms
    va, vb = a.values(atoms), b.values(atoms)
    assert list(va) == list(vb)
    for e in va:
        assert va[e].size > 0
        np.testing.assert_array_equal(va[e], vb[e])


# -- parsing the good files -------------------------------------------------------

def test_read_params_tables():
    sf = SymmetryFunctions.read(PARAMS)
    assert sf.elements == ("Si", "C")
    np.testing.assert_array_equal(sf.tables["Si"], EXPECTED_SI)
    np.testing.assert_array_equal(sf.tables["C"], EXPECTED_C)
    assert sf.size("Si") == 10 and sf.size("C") == 8
    assert sf.cutoff == 6.0


def test_read_params_element_order_defines_indices():
    """Type indices refer to the mapping's order: the same files read with C
    first give the same numeric tables, but index 1 now means C."""
    original = SymmetryFunctions.read(PARAMS)
    flipped = SymmetryFunctions.read({"C": PARAMS["C"], "Si": PARAMS["Si"]})
    assert flipped.elements == ("C", "Si")
    np.testing.assert_array_equal(flipped.tables["Si"], EXPECTED_SI)
    np.testing.assert_array_equal(flipped.tables["C"], EXPECTED_C)
    # hence files and structure with both labels exchanged describe the same thing
    exchanged = SymmetryFunctions.read({"C": PARAMS["Si"], "Si": PARAMS["C"]})
    relabel = structure()
    relabel.set_chemical_symbols(["C" if s == "Si" else "Si" for s in relabel.get_chemical_symbols()])
    a, b = original.values(structure()), exchanged.values(relabel)
    np.testing.assert_array_equal(a["Si"], b["C"])
    np.testing.assert_array_equal(a["C"], b["Si"])


def test_read_potential_saved_tables():
    sf = SymmetryFunctions.read_potential_saved(POTENTIAL)
    assert sf.elements == ("Si", "C")
    np.testing.assert_array_equal(sf.tables["Si"], EXPECTED_SI)
    np.testing.assert_array_equal(sf.tables["C"], EXPECTED_C)


def test_params_and_potential_saved_agree():
    a = SymmetryFunctions.read(PARAMS)
    b = SymmetryFunctions.read_potential_saved(POTENTIAL)
    assert a.fingerprint() == b.fingerprint()
    assert_same_values(a, b)


def test_method_example_file_is_the_default_set():
    sf = SymmetryFunctions.read({"Si": FIXTURES / "params_Si_example"})
    default = SymmetryFunctions.default(["Si"])
    np.testing.assert_array_equal(sf.tables["Si"], default.tables["Si"])
    assert sf.fingerprint() == default.fingerprint()


def test_potential_saved_blocks_in_any_order(tmp_path):
    """POT blocks need not follow ELEM_LIST order; blank lines and extra
    trailing sections are skipped."""
    text = POTENTIAL.read_text()
    head, rest = text.split("POT Si", 1)
    si_block, c_block = rest.split("POT C", 1)
    path = tmp_path / "potential_saved"
    path.write_text(head + "\n\nPOT C" + c_block + "\n\nPOT Si" + si_block + "\n")
    sf = SymmetryFunctions.read_potential_saved(path)
    assert sf.elements == ("Si", "C")
    np.testing.assert_array_equal(sf.tables["Si"], EXPECTED_SI)
    np.testing.assert_array_equal(sf.tables["C"], EXPECTED_C)


def test_params_g2_second_index_is_ignored(tmp_path):
    """SIMPLE-NN reads a G2's neighbour from I1 and ignores I2, whatever it holds."""
    lines = PARAMS["Si"].read_text().splitlines()
    g2 = [k for k, line in enumerate(lines) if line.split()[0] == "2"]
    assert g2
    for k in g2:
        words = lines[k].split()
        words[2] = str(k % 3 + 1)      # 1, 2, 3 in turn: same element, other, out of range
        lines[k] = " ".join(words)
    path = tmp_path / "params_Si"
    path.write_text("\n".join(lines) + "\n")
    sf = SymmetryFunctions.read({"Si": path, "C": PARAMS["C"]})
    np.testing.assert_array_equal(sf.tables["Si"], EXPECTED_SI)


def test_params_comments_and_blank_lines(tmp_path):
    lines = PARAMS["Si"].read_text().splitlines()
    path = tmp_path / "params_Si"
    path.write_text("# Si centres\n\n" + "\n".join(f"{line}   # row {k}" for k, line in enumerate(lines)) + "\n\n")
    sf = SymmetryFunctions.read({"Si": path, "C": PARAMS["C"]})
    np.testing.assert_array_equal(sf.tables["Si"], EXPECTED_SI)


# -- I1 / I2 order ------------------------------------------------------------------

def _swap_indices(src: Path, dst: Path) -> None:
    out = []
    for line in src.read_text().splitlines():
        w = line.split()
        w[1], w[2] = w[2], w[1]          # G2 becomes "2 0 I1 ...", G4/G5 "4 I2 I1 ..."
        out.append(" ".join(w))
    dst.write_text("\n".join(out) + "\n")


def test_index_order_does_not_matter(tmp_path):
    swapped = {}
    for e, path in PARAMS.items():
        swapped[e] = tmp_path / path.name
        _swap_indices(path, swapped[e])
    assert swapped["Si"].read_text() != PARAMS["Si"].read_text()
    a = SymmetryFunctions.read(PARAMS)
    b = SymmetryFunctions.read(swapped)
    for e in a.elements:
        np.testing.assert_array_equal(a.tables[e], b.tables[e])
    assert_same_values(a, b)


def test_element_order_in_potential_saved_pairs_does_not_matter(tmp_path):
    head, body = POTENTIAL.read_text().split("\n", 1)
    text = head + "\n" + body.replace(" Si C\n", " C Si\n")
    assert head == "ELEM_LIST Si C" and text.count(" C Si\n") >= 3
    path = tmp_path / "potential_saved"
    path.write_text(text)
    b = SymmetryFunctions.read_potential_saved(path)
    assert_same_values(SymmetryFunctions.read_potential_saved(POTENTIAL), b)


# -- write_params --------------------------------------------------------------------

@pytest.mark.parametrize("source", ["params", "potential_saved", "default", "custom"])
def test_write_params_round_trip(tmp_path, source):
    if source == "params":
        sf = SymmetryFunctions.read(PARAMS)
    elif source == "potential_saved":
        sf = SymmetryFunctions.read_potential_saved(POTENTIAL)
    elif source == "default":
        sf = SymmetryFunctions.default(["Si", "C"], cutoff=5.3)
    else:   # awkward floats must survive the text round trip exactly
        rng = np.random.default_rng(0)
        rows = [[2, 1, -1, 4.0 + rng.random(), rng.random(), 3 * rng.random(), 0.0],
                [4, 0, 1, 5.0 + rng.random(), rng.random() / 7, 1 + 3 * rng.random(), -1.0],
                [5, 1, 1, 6.0 + rng.random(), rng.random() / 3, 1.0, 1.0]]
        sf = SymmetryFunctions(["Si", "C"], {"Si": rows, "C": rows[::-1]})
    paths = sf.write_params(tmp_path)
    assert list(paths) == list(sf.elements)
    for e, p in paths.items():
        assert Path(p).name == f"params_{e}"
        for line in Path(p).read_text().splitlines():
            assert len(line.split()) == 7, line
            assert _all_numbers(line), (
                f"write_params wrote a line SIMPLE-NN cannot read: {line!r} "
                "(repr() of numpy.float64 is 'np.float64(x)' since numpy 2)")
    back = SymmetryFunctions.read(paths)
    assert back.elements == sf.elements
    for e in sf.elements:
        np.testing.assert_array_equal(back.tables[e], sf.tables[e])
    assert back.fingerprint() == sf.fingerprint()
    assert_same_values(sf, back)


def _all_numbers(line: str) -> bool:
    try:
        [float(w) for w in line.split()]
    except ValueError:
        return False
    return True


def test_written_g2_uses_zero_second_index(tmp_path):
    paths = SymmetryFunctions.read(PARAMS).write_params(tmp_path)
    line = Path(paths["Si"]).read_text().splitlines()[0]
    assert line.split()[:3] == ["2", "1", "0"]
    assert _all_numbers(line), f"write_params wrote a non-numeric field: {line!r}"
    assert [float(w) for w in line.split()[3:]] == [6.0, 0.003214, 0.0, 0.0]


# -- malformed input -------------------------------------------------------------------

def _params_with(tmp_path, line_no: int, new_line: str, element="Si"):
    """Copy of params_<element> with line ``line_no`` (1-based) replaced."""
    lines = PARAMS[element].read_text().splitlines()
    lines[line_no - 1] = new_line
    path = tmp_path / f"params_{element}"
    path.write_text("\n".join(lines) + "\n")
    files = dict(PARAMS)
    files[element] = path
    return files, path


def _assert_error(excinfo, path, line_no, *words):
    message = str(excinfo.value)
    assert str(path) in message, message
    if line_no is not None:
        assert f"line {line_no}" in message, message
    rest = message.replace(str(path), "")   # the tmp path may itself contain the words
    for w in words:
        assert w.lower() in rest.lower(), f"{w!r} not in {message!r}"


@pytest.mark.parametrize("line_no, line, words", [
    (3, "2 2 0 6.0 0.035711 0.0", ["columns"]),                    # 6 columns
    (4, "2 2 0 5.0 0.6 2.4 0.0 1.0", ["columns"]),                 # 8 columns
    (2, "2 1 0 6.0 eta 0.0 0.0", ["number"]),                      # non-numeric
    (7, "4 1 two 6.0 0.028569 2.0 1.0", ["number"]),
    (6, "3 1 1 6.0 0.000357 1.0 -1.0", ["type", "3"]),             # G3 is not supported
    (5, "2 3 0 5.0 1.2 3.8 0.0", ["index", "3"]),                   # only 2 elements
    (8, "4 2 3 6.0 0.089277 4.0 -1.0", ["index", "3"]),
    (9, "5 0 2 5.5 0.01 1.0 1.0", ["index", "0"]),                  # G5 needs two indices
    (1, "2 1 0 -6.0 0.003214 0.0 0.0", ["cutoff"]),                 # negative cutoff
    (10, "5 2 2 0 0.005 2.0 -1.0", ["cutoff"]),                     # zero cutoff
    (6, "4 1 1 6.0 0.000357 1.0 0.5", ["lambda"]),                  # lambda must be +-1
    (7, "4 1 2 6.0 0.028569 0.0 1.0", ["zeta"]),
    (2, "2 1 0 6.0 -0.2 0.0 0.0", ["eta"]),
    (3, "2 0 0 6.0 0.035711 0.0 0.0", ["G2"]),                      # G2 without an element
])
def test_params_errors(tmp_path, line_no, line, words):
    files, path = _params_with(tmp_path, line_no, line)
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read(files)
    _assert_error(excinfo, path, line_no, *words)


def test_params_type3_written_like_g2(tmp_path):
    """A G3 line in SIMPLE-NN's radial layout (I2 = 0): the message must say that
    the type is the problem, not blame the element index."""
    files, path = _params_with(tmp_path, 2, "3 1 0 6.0 0.5 0.0 0.0")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read(files)
    _assert_error(excinfo, path, 2)
    message = str(excinfo.value).replace(str(path), "")
    assert "type" in message, (
        f"misleading diagnostic for a G3 line: {message!r} blames the element index "
        "instead of saying that type 3 is not supported")


def test_params_error_line_numbers_count_comments(tmp_path):
    path = tmp_path / "params_Si"
    path.write_text("# header\n\n2 1 0 6.0 0.1 0.0 0.0\n4 1 1 6.0 0.1 1.0\n")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read({"Si": path})
    _assert_error(excinfo, path, 4, "columns")


def test_params_empty_file(tmp_path):
    path = tmp_path / "params_Si"
    path.write_text("# nothing here\n\n")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read({"Si": path})
    _assert_error(excinfo, path, None)


def test_params_error_is_a_value_error():
    assert issubclass(ParameterFileError, ValueError)


def _potential_with(tmp_path, old: str, new: str, count=1):
    text = POTENTIAL.read_text()
    assert old in text, old
    path = tmp_path / "potential_saved"
    path.write_text(text.replace(old, new, count))
    return path


def _line_of(path: Path, start: str) -> int:
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(start):
            return k
    raise AssertionError(start)


@pytest.mark.parametrize("old, new, words", [
    ("2 5.0 0.6 2.4 0.0 C\n", "2 5.0 0.6 2.4 0.0 Ge\n", ["Ge"]),               # element not listed
    ("4 6.0 0.028569 2.0 1.0 Si C\n", "4 6.0 0.028569 2.0 1.0 Si Xx\n", ["Xx"]),
    ("2 6.0 0.214264 0.0 0.0 Si\n", "2 6.0 0.214264 0.0 Si\n", ["TYPE"]),        # 5 columns
    ("4 6.0 0.089277 4.0 -1.0 C C\n", "4 6.0 0.089277 four -1.0 C C\n", ["number"]),
    ("5 5.5 0.01 1.0 1.0 Si C\n", "3 5.5 0.01 1.0 1.0 Si C\n", ["type"]),
    ("2 6.0 0.003214 0.0 0.0 Si\n", "2 -6.0 0.003214 0.0 0.0 Si\n", ["cutoff"]),
    ("2 6.0 0.035711 0.0 0.0 C\n", "2 6.0 0.035711 0.0 0.0 C Si\n", ["G2"]),     # G2, two names
    ("4 6.0 0.000357 1.0 -1.0 Si Si\n", "4 6.0 0.000357 1.0 -1.0 Si\n", ["G4"]),  # G4, one name
])
def test_potential_saved_symmetry_line_errors(tmp_path, old, new, words):
    path = _potential_with(tmp_path, old, new)
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, _line_of(path, new.strip()), *words)


def test_potential_saved_missing_sym(tmp_path):
    path = _potential_with(tmp_path, "SYM 8\n", "")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, _line_of(path, "POT C") + 1, "SYM")


def test_potential_saved_bad_sym_count(tmp_path):
    path = _potential_with(tmp_path, "SYM 10\n", "SYM ten\n")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, _line_of(path, "SYM ten"), "SYM")


def test_potential_saved_unknown_element_in_elem_list(tmp_path):
    path = _potential_with(tmp_path, "ELEM_LIST Si C\n", "ELEM_LIST Si Qq\n")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, 1, "Qq")


def test_potential_saved_pot_for_unlisted_element(tmp_path):
    path = _potential_with(tmp_path, "POT C 6.0\n", "POT Ge 6.0\n")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, _line_of(path, "POT Ge"), "ELEM_LIST")


def test_potential_saved_missing_block(tmp_path):
    text = POTENTIAL.read_text()
    path = tmp_path / "potential_saved"
    path.write_text(text.split("POT C")[0])
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, None, "C")


def test_potential_saved_truncated_inside_sym_block(tmp_path):
    lines = POTENTIAL.read_text().splitlines()
    path = tmp_path / "potential_saved"
    path.write_text("\n".join(lines[:8]) + "\n")  # SYM 10 but only 4 rows
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, None, "SYM")


def test_potential_saved_without_elem_list(tmp_path):
    path = _potential_with(tmp_path, "ELEM_LIST Si C\n", "\n")
    with pytest.raises(ParameterFileError) as excinfo:
        SymmetryFunctions.read_potential_saved(path)
    _assert_error(excinfo, path, None, "ELEM_LIST")


def test_params_file_not_found(tmp_path):
    with pytest.raises(OSError):
        SymmetryFunctions.read({"Si": tmp_path / "params_Si"})


def test_fixture_files_untouched(tmp_path):
    """The error tests work on copies: the fixtures still parse."""
    shutil.copy(POTENTIAL, tmp_path / "p")
    SymmetryFunctions.read_potential_saved(tmp_path / "p")
    SymmetryFunctions.read(PARAMS)
