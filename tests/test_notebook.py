"""docs/notebook.ipynb, executed as Jupyter would run it (a real kernel, through nbclient), and its outputs checked.

The notebook is the notebook user's first page: every cell must run, and what a
user looks at must be there: the dataset's and the run's HTML views (warnings
first), DataFrames as tables, a recorded figure inline, an external evaluation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"

nbformat = pytest.importorskip("nbformat", reason="nbformat is a test dependency (pip install -e .[test])")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a test dependency (pip install -e .[test])")
pytest.importorskip("ipykernel", reason="ipykernel is a test dependency (pip install -e .[test])")


#: Executing the notebook costs half a minute: .ci/run runs these, ./scripts/test.sh leaves them out.
pytestmark = pytest.mark.heavy

@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run top to bottom in a fresh kernel, in a folder of its own."""
    folder = tmp_path_factory.mktemp("notebook")
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    notebook = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()  # a cell that raises raises here (CellExecutionError), naming the cell
    return [cell for cell in notebook.cells if cell.cell_type == "code"], folder


def _data(cell, kind: str) -> str:
    """The cell's value as Jupyter shows it (its last expression), else what it displayed, in ``kind``."""
    outputs = sorted(cell.outputs, key=lambda o: o.output_type != "execute_result")
    for output in outputs:
        if kind in output.get("data", {}):
            return output["data"][kind]
    raise AssertionError(f"no {kind} output in cell:\n{cell.source}")


def _stderr(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")


def test_every_cell_runs_without_an_error(executed):
    cells, _ = executed
    assert all(output.output_type != "error" for cell in cells for output in cell.outputs)
    assert all(cell.execution_count for cell in cells)


def test_the_dataset_shows_its_images_per_class_and_split(executed):
    cells, _ = executed
    page = _data(cells[0], "text/html")
    assert "<table" in page and "covid" in page and "total" in page


def test_the_run_shows_its_warnings_before_its_results_and_its_figures(executed):
    cells, folder = executed
    page = _data(cells[2], "text/html")
    assert page.index("warning") < page.index("<table")
    assert "RANDOM" in page or "random" in page
    assert page.count("data:image/png;base64,") >= 3
    assert (folder / "runs" / "four-vgg16" / "config.json").is_file()


def test_tables_are_dataframes_and_the_figure_is_inline(executed):
    cells, _ = executed
    summary = _data(cells[3], "text/html")
    assert "dataframe" in summary and "logreg" in summary and "pixels" in summary
    assert "recall" in _data(cells[4], "text/html")
    assert _data(cells[5], "image/png")  # run.show("curves")


def test_the_external_evaluation_is_shown_and_recorded(executed):
    cells, folder = executed
    assert "site_b" in _data(cells[6], "text/html")
    assert "site_b" in _data(cells[7], "text/html")
    assert (folder / "runs" / "four-vgg16" / "external" / "site_b" / "metrics.json").is_file()


def test_a_scikit_learn_pipeline_cross_validates_by_patient(executed):
    cells, _ = executed
    printed = "".join(o.get("text", "") for o in cells[8].outputs if o.get("name") == "stdout")
    assert printed.startswith("accuracy per fold: [") and printed.count(".") >= 4  # four folds' scores


def test_long_calls_show_a_progress_bar_in_the_cell(executed):
    cells, _ = executed
    bars = [o["data"]["text/html"] for o in cells[1].outputs  # xf.features: the backbone on 40 images
            if o.output_type in ("display_data", "update_display_data") and "text/html" in o.get("data", {})]
    assert bars and "<progress" in bars[-1] and "40/40 images" in bars[-1], cells[1].outputs


def test_no_framework_start_up_lines_reach_the_notebook(executed):
    cells, _ = executed
    noise = ("cuda", "absl::InitializeLog", "oneDNN", "cpu_feature_guard", "TF_ENABLE_ONEDNN_OPTS")
    for cell in cells:
        text = _stderr(cell)
        assert not any(word in text for word in noise), (cell.source, text)
