"""The tutorial opens wherever its kernel starts: in docs/ (`jupyter lab`) or at the project's root (some
editors, `jupyter execute docs/...` run from the root). nbmake runs the whole notebook from docs/;
here its first cells, which find the project and import it, run from both places."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "docs", "pong_from_pixels.ipynb")


@pytest.mark.parametrize("start_in", [ROOT, os.path.join(ROOT, "docs")], ids=["the root", "docs"])
def test_the_tutorial_finds_and_imports_the_project_wherever_its_kernel_starts(start_in):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "sys.path.insert" in code[0].source and "import watch" in code[1].source
    notebook.cells = code[:2]                          # find the project, import from it
    NotebookClient(notebook, timeout=120, resources={"metadata": {"path": start_in}}).execute()
    printed = "".join(out.get("text", "") for out in notebook.cells[1].outputs)
    assert printed.startswith("Hyperparameters(")
