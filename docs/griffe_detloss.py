"""A griffe extension for the API reference (mkdocs.yml): detloss's docstrings as mkdocstrings shows them.

The docstrings are Google style with two reStructuredText habits that Markdown would print literally:

- cross-reference roles (``:func:`iou_xyxy```) become links to the object where the site documents
  it and inline code otherwise (an *optional* mkdocs-autorefs reference, so a role pointing at an
  undocumented helper never fails ``mkdocs build --strict``);
- a paragraph ending in ``::`` introduces an indented formula block: the block already renders as
  code in Markdown, so ``::`` becomes ``:``; an ``Example:`` heading becomes Google's ``Examples:``
  section, so its ``>>>`` lines render as a Python session; a parameter described as ``> 0`` is
  escaped so that it is not a block quote.

Instance attributes set in ``__init__`` without a docstring of their own
(``self.num_classes = num_classes``) are dropped: the constructor's parameters document them.
"""

from __future__ import annotations

import html
import re

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?(?P<name>[\w.]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)
_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_QUOTE_AFTER_NAME = re.compile(r"^(\s+[\w, ]+:\s+)>(?!>)", re.MULTILINE)  # `sigma: > 0.` is no quote


def _target(obj: griffe.Object, name: str) -> str | None:
    """The full path that ``name`` refers to from ``obj`` (Sphinx's rules, simplified), or None."""
    if name.startswith("."):  # relative to the enclosing module (package for an __init__)
        module = obj if obj.is_module else obj.module
        base = module.path if module.is_package or module.is_init_module else module.parent.path
        return base + name
    if "." in name and name.split(".", 1)[0] == obj.package.name:
        return name
    try:
        return obj.resolve(name.split(".", 1)[0]) + name[len(name.split(".", 1)[0]):]
    except (griffe.NameResolutionError, ValueError, KeyError):
        return None


def _to_markdown(obj: griffe.Object) -> None:
    if obj.docstring is None:
        return

    def link(match: re.Match[str]) -> str:
        name = match["name"]
        path = _target(obj, name)
        if path is None:
            return f"`{name}`"
        code = f"<code>{html.escape(name.lstrip('.'))}</code>"
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    text = _ROLE.sub(link, obj.docstring.value)
    text = _LITERAL_MARKER.sub(":", text)
    text = _QUOTE_AFTER_NAME.sub(r"\1\\>", text)
    obj.docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", text)


class DetlossDocstrings(griffe.Extension):
    """Rewrites the docstrings for Markdown and drops undocumented instance attributes, once loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            _to_markdown(obj)
            for name, member in list(obj.members.items()):
                if member.is_alias:
                    continue
                if member.is_attribute and "instance-attribute" in member.labels and not member.docstring:
                    del obj.members[name]
                    continue
                stack.append(member)
