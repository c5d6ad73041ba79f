"""A section of a Markdown file, rewritten in place between its markers
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` (``--doc``); the rest of the file is
kept."""
from pathlib import Path

#: The start of a results file that does not exist yet.
NEW_FILE = ('# EN vs BatchNorm: speed and memory\n\nRegenerate with `make benchmark` (the '
            '`layer` and `model` subcommands of tools/benchmark.py, each updating its own '
            'section).\n\n')


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the markers of section ``name`` in ``path``, replacing what
    was there, or append the section where the file has none; creates the file (with
    :data:`NEW_FILE`) and its folder where missing."""
    begin, end = f'<!-- {name}:begin -->', f'<!-- {name}:end -->'
    block = f'{begin}\n{text}{end}\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else NEW_FILE
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        rest = rest.split(end, 1)[1].lstrip('\n')
        new = head + block + ('\n' + rest if rest else '')
    else:
        new = old.rstrip('\n') + '\n\n' + block
    path.write_text(new)
