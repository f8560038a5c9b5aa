"""examples/quickstart.ipynb, executed by nbclient on a real Jupyter kernel, outputs checked."""

import base64
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from embench.results import NOT_A_RESULT, NOT_A_RESULT_MARK, load_record
from embench.show import show_path

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"

pytestmark = pytest.mark.subprocess  # a kernel process


def texts(cell):
    """Everything a code cell showed, as text (streams, plain text and markdown outputs)."""
    out = []
    for output in cell.outputs:
        out.append(output.get("text", ""))
        data = output.get("data", {})
        out += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "".join(out)


def test_quickstart_runs_on_a_kernel_and_shows_the_runs(tmp_path, _isolated_home):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    # the kernel inherits this test's EMBENCH_HOME; a failing cell raises CellExecutionError
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    shown = "".join(texts(cell) for cell in code)
    assert "Error" not in shown and "Warning" not in shown, shown  # e.g. rich's ipywidgets one
    # the kernel generated the data (with the generator's worker pool), then embedded
    assert "generate lunarlander: started" in shown and "embed mobilenet-random: done" in shown

    records = {load_record(p).encoder: (load_record(p), p) for p in
               (_isolated_home / "results" / "lunarlander").glob("*.json")}
    assert set(records) == {"pca", "mobilenet-random"}
    (pca, _), (mobilenet, picture_of) = records["pca"], records["mobilenet-random"]
    assert mobilenet.z_dim == 576 and pca.z_dim == 8
    assert f"'mlp': {pca.test['mlp']!r}" in texts(code[1])
    assert f"'mlp': {mobilenet.test['mlp']!r}" in texts(code[2])

    (table,) = [o.data["text/markdown"] for o in code[3].outputs if "data" in o]
    for record in (pca, mobilenet):
        cells = [f"{record.test[p]:.2f}" + ("" if record.beats_baseline(p)
                                            else f" {NOT_A_RESULT_MARK}")
                 for p in ("mlp", "linear")]
        assert (f"| {record.encoder} | {record.z_dim} | {cells[0]} | {cells[1]} | "
                f"{record.test['baseline']:.2f} |") in table
    assert table.endswith(f"{NOT_A_RESULT_MARK} {NOT_A_RESULT}")

    (png,) = [o.data["image/png"] for o in code[4].outputs if "image/png" in o.get("data", {})]
    assert base64.b64decode(png) == show_path(picture_of).read_bytes()  # the run's picture


def test_the_readme_links_the_notebook():
    readme = (NOTEBOOK.parents[1] / "README.md").read_text()
    assert "(examples/quickstart.ipynb)" in readme
    assert json.loads(NOTEBOOK.read_text())["metadata"]["kernelspec"]["name"] == "python3"
