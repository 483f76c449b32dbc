"""Every ```python block of README.md runs, so the README cannot rot.

Convention (for whoever edits the README):
- Each ```python block runs on its own, in a fresh namespace, as a user pasting it would.
- A block that visibly continues the previous one (uses its names) says so with the HTML comment
  ``<!-- continues -->`` on the line right above its opening fence (blank lines between are
  fine; GitHub renders nothing for it). It then runs in the previous block's namespace.
- ```bash (and every other language) blocks are not run.
- Blocks run in a temporary working directory with ``$PYG_MUP_CACHE`` pointing inside it, so a
  block that needs data can call ``load_dataset()`` (the shipped ogbg-molesol) and write files
  without touching the user's cache. Keep blocks small: each is a test case.

A failing block fails its own test case, ``test_readme_block[block<k>-line<n>]``, with a
traceback whose ``README.md`` line numbers are the README's own.
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CONTINUES = "<!-- continues -->"
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    index: int  # among the README's python blocks, from 0
    line: int  # 1-based README line of the first code line
    source: str
    continues: bool  # runs in the previous python block's namespace

    @property
    def id(self) -> str:
        return f"block{self.index}-line{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown ``text``, with the line each starts on."""
    blocks: list[Block] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        end = next((i for i in range(number + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README line {number + 1}: code block is never closed")
        if opening.group(1) == "python":
            above = [line for line in lines[:number] if line.strip()]
            continues = bool(above) and above[-1].strip() == CONTINUES
            if continues and not blocks:
                raise ValueError(f"README line {number + 1}: the first python block continues")
            source = "\n".join(lines[number + 1 : end])
            blocks.append(Block(len(blocks), number + 2, source, continues))
        number = end + 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_parser_finds_blocks_and_the_continuation_marker():
    text = "\n".join(
        [
            "intro",  # 1
            "```python",  # 2
            "a = 1",  # 3
            "```",  # 4
            "```bash",  # 5
            "make test",  # 6
            "```",  # 7
            CONTINUES,  # 8
            "",  # 9
            "```python",  # 10
            "b = a + 1",  # 11
            "```",  # 12
        ]
    )
    blocks = python_blocks(text)
    assert [(b.index, b.line, b.source, b.continues) for b in blocks] == [
        (0, 3, "a = 1", False),
        (1, 11, "b = a + 1", True),
    ]
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")
    assert len(BLOCKS) >= 3  # the README's own: FlexGraphConv, custom attention, μP


@pytest.fixture(scope="module")
def modules() -> dict[int, types.ModuleType]:
    """Each block's module after it ran, for the block that continues it."""
    return {}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block, modules, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYG_MUP_CACHE", str(tmp_path / "cache"))
    if block.continues:
        if block.index - 1 not in modules:
            pytest.fail(f"{block.id} continues block{block.index - 1}, which did not run")
        module = modules[block.index - 1]
    else:
        module = types.ModuleType(f"readme_{block.id.replace('-', '_')}")
    # A real module in sys.modules, as for a pasted script: PyG's MessagePassing inspects the
    # module its subclasses are defined in.
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # Padding keeps the README's line numbers in the traceback.
    code = compile("\n" * (block.line - 1) + block.source, str(README), "exec")
    exec(code, module.__dict__)
    modules[block.index] = module
