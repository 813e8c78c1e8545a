r"""Render corral's docstrings, written for ``help()`` and doctest, as Markdown for mkdocstrings.

The docstrings in ``src/corral`` use a little reStructuredText: roles (``:class:`Cmd```,
``:meth:`~corral.MessageStream.strings```), ``::`` literal blocks and ``>>>`` sessions, and
``#:`` comments above attributes. Once the package is loaded this Griffe extension rewrites them:

* a role becomes a cross-reference when its target is documented in the API reference (a public
  name of ``corral`` or ``corral.child``, or a member of one), otherwise inline code;
* a ``>>>`` session becomes a ``pycon`` code block (doctest flags removed), a ``::`` literal block
  a ``python`` code block;
* ``#:`` comments above an attribute without a docstring become its docstring;
* a parameter default that names a private module constant (``query=_FETCH_ALL``) shows that
  constant's value (``LogsQuery.fetch_all()``);
* a ``\n`` escape in a non-raw docstring, which Python turns into a real newline (breaking the
  text's indentation), is read back as the two characters it was meant to show.

Cross-references are emitted only to objects that the reference pages render, so the strict
build never meets a dangling one.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_DOCTEST_FLAG = re.compile(r"\s*#\s*doctest:.*$")
_PUBLIC_MODULES = ("corral", "corral.child")
_NEWLINE_ESCAPE = re.compile(r"(?<!\\)\\n")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class RestDocstrings(griffe.Extension):
    """Rewrite the docstrings of the ``corral`` package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "corral":
            return
        self._loader = loader
        self._documented: set[str] = set()
        self._public_path: dict[str, str] = {}  # canonical path -> public path
        for module_path in _PUBLIC_MODULES:
            module = pkg if module_path == "corral" else pkg.modules[module_path.split(".")[1]]
            self._public_path[module.path] = module_path
            self._documented.add(module_path)
            for name in module.exports or []:
                name = str(name)
                if name.startswith("_") or name not in module.members:
                    continue
                member = module.members[name]
                target = member.final_target if isinstance(member, griffe.Alias) else member
                public = f"{module_path}.{name}"
                self._documented.add(public)
                self._public_path[target.path] = public
                if isinstance(target, griffe.Class):
                    # Members inherited from a private base are rendered on the public class
                    # (the reference sets inherited_members for those classes).
                    private_base = any(str(base).startswith("_") for base in target.bases)
                    members = target.all_members if private_base else target.members
                    for sub in members:
                        if not sub.startswith("_"):
                            self._documented.add(f"{public}.{sub}")
        for module in pkg.modules.values():
            self._walk(module)
        self._walk(pkg, modules=False)

    # --- walking ------------------------------------------------------------------------------

    def _walk(self, obj: griffe.Object, *, modules: bool = True) -> None:
        if isinstance(obj, griffe.Attribute) and obj.docstring is None:
            self._add_comment_docstring(obj)
        if isinstance(obj, griffe.Function):
            self._show_private_defaults(obj)
        if obj.docstring is not None:
            self._repair_escapes(obj.docstring)
            obj.docstring.value = self._convert(obj.docstring.value, obj)
        for member in obj.members.values():
            if isinstance(member, griffe.Alias) or (member.is_module and not modules):
                continue
            self._walk(member)

    def _add_comment_docstring(self, attr: griffe.Attribute) -> None:
        """Take the ``#:`` comment lines right above ``attr`` as its docstring."""
        try:
            filepath = attr.filepath
        except griffe.BuiltinModuleError:
            return
        if attr.lineno is None or not isinstance(filepath, Path):
            return
        if filepath not in attr.lines_collection:
            return
        lines = attr.lines_collection[filepath]
        comment: list[str] = []
        index = attr.lineno - 2  # the line above, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment),
                lineno=index + 2,
                parent=attr,
                parser=self._loader.docstring_parser,
                parser_options=self._loader.docstring_options,
            )

    @staticmethod
    def _show_private_defaults(func: griffe.Function) -> None:
        module = func.module
        for param in func.parameters:
            name = str(param.default) if param.default is not None else ""
            constant = module.members.get(name) if name.startswith("_") else None
            if isinstance(constant, griffe.Attribute) and constant.value is not None:
                param.default = str(constant.value)

    @staticmethod
    def _repair_escapes(docstring: griffe.Docstring) -> None:
        try:
            literal = docstring.source.strip()
        except ValueError:
            return
        if "r" in literal[:2].lower() or not _NEWLINE_ESCAPE.search(literal):
            return
        try:
            value = ast.literal_eval(_NEWLINE_ESCAPE.sub(r"\\\\n", literal))
        except (SyntaxError, ValueError):
            return
        if isinstance(value, str):
            docstring.value = inspect.cleandoc(value)

    # --- converting ---------------------------------------------------------------------------

    def _convert(self, text: str, obj: griffe.Object) -> str:
        lines = text.split("\n")
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.lstrip(" ")
            if stripped.startswith(">>>"):
                i = self._doctest_block(lines, i, out)
            elif stripped.startswith("```"):
                i = self._fenced_block(lines, i, out)
            elif stripped.endswith("::") and self._has_literal_block(lines, i):
                i = self._literal_block(lines, i, out, obj)
            else:
                out.append(self._roles(line, obj))
                i += 1
        return "\n".join(out).strip("\n")

    @staticmethod
    def _blank_before(out: list[str]) -> None:
        if out and out[-1].strip():
            out.append("")

    def _doctest_block(self, lines: list[str], i: int, out: list[str]) -> int:
        pad = " " * _indent(lines[i])
        self._blank_before(out)
        out.append(f"{pad}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(_DOCTEST_FLAG.sub("", lines[i]))
            i += 1
        out.append(f"{pad}```")
        out.append("")
        return i

    @staticmethod
    def _fenced_block(lines: list[str], i: int, out: list[str]) -> int:
        out.append(lines[i])
        i += 1
        while i < len(lines):
            out.append(lines[i])
            i += 1
            if lines[i - 1].lstrip(" ").startswith("```"):
                break
        return i

    @staticmethod
    def _has_literal_block(lines: list[str], i: int) -> bool:
        base = _indent(lines[i])
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        return j > i + 1 and j < len(lines) and _indent(lines[j]) > base

    def _literal_block(self, lines: list[str], i: int, out: list[str], obj: griffe.Object) -> int:
        line = lines[i]
        base = _indent(line)
        pad = " " * base
        intro = line.rstrip()[:-2]
        if intro.strip():
            # "text::" reads "text:"; "text ::" reads "text".
            intro = intro.rstrip() if intro.endswith(" ") else intro + ":"
            out.append(self._roles(intro, obj))
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            i -= 1
            block.pop()
        body = [b for b in block if b.strip()]
        cut = min(_indent(b) for b in body)
        self._blank_before(out)
        out.append(f"{pad}```python")
        out.extend(pad + b[cut:] if b.strip() else "" for b in block)
        out.append(f"{pad}```")
        return i

    # --- roles --------------------------------------------------------------------------------

    def _roles(self, line: str, obj: griffe.Object) -> str:
        return _ROLE.sub(lambda match: self._role(match, obj), line)

    def _role(self, match: re.Match[str], obj: griffe.Object) -> str:
        kind, short, target = match.groups()
        target = target.strip()
        display = target.rsplit(".", 1)[-1] if short else target
        if kind in ("meth", "func") and not display.endswith(")"):
            display += "()"
        resolved = self._resolve(target.removesuffix("()"), obj)
        if resolved is None:
            return f"`{display}`"
        return f"[`{display}`][{resolved}]"

    def _resolve(self, target: str, obj: griffe.Object) -> str | None:
        candidates: list[str] = []
        scope: griffe.Object | None = obj
        while scope is not None:
            public = self._public_path.get(scope.path)
            if public is not None:
                candidates.append(f"{public}.{target}")
            scope = scope.parent
        candidates += [target, f"corral.{target}", f"corral.{target.removeprefix('corral.')}"]
        for candidate in candidates:
            if candidate in self._documented:
                return candidate
        return None
