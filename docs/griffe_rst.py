"""A griffe extension: jaxconv's reStructuredText docstring bits, in Markdown.

jaxconv's docstrings are Google style, with the math and the cross-references
written as in optax and JAX: ``.. math::`` blocks, ``:math:`x``` and
``:func:`name``` roles, and ``::`` before a literal block. ``help()`` shows
them as they are; this extension rewrites them, while the API page is built,
into what the site's Markdown understands:

* ``.. math:: expr`` (with the expression on the same line, on the indented
  lines below, or both) becomes a ``$$ ... $$`` block, which
  ``pymdownx.arithmatex`` hands to MathJax;
* ``:math:`expr``` becomes ``$expr$``;
* ``:func:`name```, ``:class:`~pkg.Name``` and the other Python roles become
  inline code (``name``, ``Name``);
* a paragraph ending in ``::`` ends in ``:`` (its indented block is already a
  Markdown code block).

Nothing else is touched. mkdocs.yml loads it with
``extensions: [docs/griffe_rst.py]`` under the python handler's options.
"""

from __future__ import annotations

import re

import griffe

_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")
_MATH_ROLE = re.compile(r":math:`(?P<expr>[^`]+)`")
_PYTHON_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):"
    r"`(?P<tilde>~?)(?P<target>[^`]+)`")


def _indent_of(line: str) -> int:
  return len(line) - len(line.lstrip())


def _roles(line: str) -> str:
  line = _MATH_ROLE.sub(lambda m: f"${m.group('expr').strip()}$", line)

  def code(match: re.Match) -> str:
    target = match.group("target").strip()
    if match.group("tilde"):
      target = target.rsplit(".", 1)[-1]
    return f"`{target}`"

  return _PYTHON_ROLE.sub(code, line)


def rst_to_markdown(text: str) -> str:
  """Rewrites the reStructuredText constructs listed in the module docstring.

  Args:
    text: a docstring, already dedented.

  Returns:
    The docstring with math blocks as ``$$ ... $$``, math roles as ``$...$``
    and Python roles as inline code.
  """
  lines = text.split("\n")
  out: list[str] = []
  i = 0
  while i < len(lines):
    match = _MATH_DIRECTIVE.match(lines[i])
    if not match:
      line = _roles(lines[i])
      if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
        line = line.rstrip()[:-1]
      out.append(line)
      i += 1
      continue
    indent = match.group("indent")
    body = [match.group("rest").strip()] if match.group("rest").strip() else []
    i += 1
    while i < len(lines):
      line = lines[i]
      if not line.strip():
        if body:
          break
        i += 1  # the blank line between the directive and its block
        continue
      if _indent_of(line) <= len(indent):
        break
      body.append(line.strip())
      i += 1
    # One line out per line in, so that griffe's line numbers stay right:
    # "$$" opens on the directive's line and closes on the block's last line.
    if out and out[-1].strip():
      out.append("")
    if not body:
      body = [""]
    body[0] = f"$$ {body[0]}".rstrip()
    body[-1] = f"{body[-1]} $$".lstrip() if len(body) > 1 else f"{body[0]} $$"
    out.extend(f"{indent}{line}" for line in body)
    if i < len(lines) and lines[i].strip():
      out.append("")
  return "\n".join(out)


class RstToMarkdown(griffe.Extension):
  """Rewrites every docstring with ``rst_to_markdown`` as it is loaded."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
    del kwargs
    if obj.docstring is not None:
      obj.docstring.value = rst_to_markdown(obj.docstring.value)
