"""The documentation: every public name documented and on the API page, the
site builds with ``mkdocs build --strict``, and the examples on the pages run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGE = DOCS / "api.md"

# Modules whose ``__all__`` is the public API, and the prefix their names get
# in the ``::: ...`` directives of docs/api.md.
PUBLIC_MODULES = ("jaxconv", "jaxconv.reference", "jaxconv.compare",
                  "jaxconv.explain")

# Public functions whose docstrings still lack an Args or a Returns section.
# Each entry fails loudly once it is fixed (strict xfail): then delete it.
MISSING_SECTIONS: set[str] = set()


def _public_names() -> list[tuple[str, str]]:
  names = []
  for module_name in PUBLIC_MODULES:
    module = importlib.import_module(module_name)
    names.extend((module_name, name) for name in module.__all__)
  return names


def _documented_paths() -> set[str]:
  return set(re.findall(r"^:::\s*([\w.]+)\s*$", API_PAGE.read_text("utf-8"),
                        flags=re.M))


def _params(names):
  return [pytest.param(
      module, name, id=f"{module}.{name}",
      marks=[pytest.mark.xfail(strict=True, reason="docstring lacks Args or "
                               "Returns; see MISSING_SECTIONS")]
      if f"{module}.{name}" in MISSING_SECTIONS else [])
      for module, name in names]


@pytest.mark.parametrize("module_name, name", _params(_public_names()))
def test_public_name_is_documented(module_name, name):
  """Functions: Google-style Args and Returns; classes: Attributes or Args."""
  obj = getattr(importlib.import_module(module_name), name)
  if not (inspect.isfunction(obj) or inspect.isclass(obj)):
    return  # a constant: it has no docstring of its own, only its entry
  doc = inspect.getdoc(obj) or ""
  if inspect.isclass(obj):
    assert re.search(r"^(Attributes|Args):$", doc, re.M), (
        f"{module_name}.{name}: class docstring needs an Attributes: or "
        f"Args: section")
  else:
    for section in ("Args", "Returns"):
      assert re.search(rf"^{section}:$", doc, re.M), (
          f"{module_name}.{name}: docstring needs a {section}: section")


@pytest.mark.parametrize("module_name, name", _public_names(),
                         ids=lambda value: value)
def test_public_name_is_on_the_api_page(module_name, name):
  assert f"{module_name}.{name}" in _documented_paths(), (
      f"add '::: {module_name}.{name}' to docs/api.md")


def test_api_page_names_only_public_things():
  public = {f"{m}.{n}" for m, n in _public_names()} | set(PUBLIC_MODULES)
  stale = _documented_paths() - public
  assert not stale, f"docs/api.md documents names that are not public: {stale}"


def test_every_nav_page_and_image_exists():
  """The pages mkdocs.yml lists and the figures the pages show are there
  (the strict build says the same, but only where mkdocs is installed)."""
  config = (ROOT / "mkdocs.yml").read_text("utf-8")
  pages = re.findall(r"^\s+- [^:]+: ([\w./-]+\.md)\s*$", config, re.M)
  assert "index.md" in pages and "api.md" in pages
  for page in pages:
    assert (DOCS / page).is_file(), f"mkdocs.yml lists missing docs/{page}"
  for page in DOCS.rglob("*.md"):
    text = page.read_text("utf-8")
    for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
      assert (page.parent / image).is_file(), f"{page.name} shows missing {image}"


def test_mkdocs_build_strict(tmp_path):
  pytest.importorskip("mkdocs")
  pytest.importorskip("material")
  pytest.importorskip("mkdocstrings_handlers.python")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
       str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
      cwd=ROOT, capture_output=True, text=True, check=False,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert result.returncode == 0, result.stderr[-4000:]
  api = (tmp_path / "site" / "api.html").read_text("utf-8")
  # The docstrings' reStructuredText was turned into Markdown.
  assert ".. math::" not in api and ":func:`" not in api
  assert "arithmatex" in api
  derivation = (tmp_path / "site" / "derivation.html").read_text("utf-8")
  assert "javascripts/mathjax/tex-svg-full.js" in derivation
  assert "googleapis" not in derivation, "pages must not need the network"


def _python_blocks(page: str) -> list[str]:
  text = (DOCS / page).read_text("utf-8")
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_quickstart_runs():
  """The python blocks of the overview page, in order, in one namespace."""
  import jax
  namespace: dict = {}
  with jax.enable_x64(False):
    for i, block in enumerate(_python_blocks("index.md")):
      code = compile(block, f"index.md block {i}", "exec")
      exec(code, namespace)


@pytest.mark.parametrize("page", ["README.md", "docs/performance.md"])
def test_page_examples_run(page):
  """The python blocks of the README and the performance page, in order,
  in one namespace, as a reader would run them (float32)."""
  import jax
  text = (ROOT / page).read_text("utf-8")
  blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
  assert blocks
  namespace: dict = {}
  with jax.enable_x64(False):
    for i, block in enumerate(blocks):
      exec(compile(block, f"{page} block {i}", "exec"), namespace)


@pytest.mark.parametrize("page", ["explain.md", "worked-examples.md"])
def test_explain_commands_show_their_real_output(page, capsys):
  """Each ``$ python -m jaxconv.explain ...`` block on the page is exactly
  what the command prints."""
  from jaxconv import explain
  text = (DOCS / page).read_text("utf-8")
  blocks = re.findall(
      r"^```console\n\$ python -m jaxconv\.explain (.*?)\n(.*?)^```", text,
      re.M | re.S)
  assert len(blocks) >= 3
  for arguments, shown in blocks:
    capsys.readouterr()
    assert explain.main(shlex.split(arguments)) == 0
    assert capsys.readouterr().out == shown, (
        f"docs/{page} is stale for: {arguments}")


def test_figures_script_draws_and_checks(tmp_path, monkeypatch):
  """docs/figures.py draws every library figure (each checked against
  jaxconv's gradients while drawing) into a scratch folder."""
  pytest.importorskip("matplotlib")
  spec = importlib.util.spec_from_file_location("jaxconv_docs_figures",
                                                DOCS / "figures.py")
  figures = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(figures)
  monkeypatch.setattr(figures, "FIGURES", tmp_path)
  monkeypatch.setattr(figures, "ROOT", tmp_path.parent)
  for draw in figures.FIGURE_FUNCTIONS.values():
    assert draw().is_file()
  # Without a results JSON, the training figure is skipped, not faked.
  assert figures.training_curves(tmp_path / "missing.json") is None


def _derivation_tags() -> list[int]:
  text = (DOCS / "derivation.md").read_text("utf-8")
  return [int(t) for t in re.findall(r"\\tag\{(\d+)\}", text)]


def test_derivation_equations_are_numbered_in_order():
  tags = _derivation_tags()
  assert tags == sorted(tags) and len(tags) == len(set(tags)), tags


def test_cited_equations_exist():
  """Every ``eq. (N)`` / ``eqs. (N)-(M)`` that the code, the tests and the
  pages cite is an equation of the derivation."""
  tags = set(_derivation_tags())
  cite = re.compile(r"[Ee]qs?\.\s*\(?(\d+)\)?(?:\s*(?:-|–|and|,)\s*\(?(\d+)\)?)?")
  sources = [*ROOT.glob("jaxconv/**/*.py"), *ROOT.glob("tests/*.py"),
             *DOCS.glob("*.md"), ROOT / "README.md"]
  missing = set()
  for path in sources:
    for match in cite.finditer(path.read_text("utf-8")):
      for number in filter(None, match.groups()):
        if int(number) not in tags:
          missing.add(f"{path.relative_to(ROOT)}: {match.group(0)}")
  assert not missing, sorted(missing)
