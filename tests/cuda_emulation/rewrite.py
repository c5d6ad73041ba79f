"""The two CUDA constructs that cuda_runtime.h cannot supply as C++, rewritten in a .cu
source so that it compiles with g++ against the emulation (tests/cuda_emulation/include):

* ``kernel<<<grid, block[, shared[, stream]]>>>(args);`` becomes
  ``::emu::launch(::emu::Config(grid, block, ...), [](auto... a) { kernel(a...); }, args);``
  (the generic lambda lets the call deduce a template kernel's arguments, as a launch does);
* ``extern __shared__ T name[];`` becomes a pointer to the block's dynamic shared memory, and
  ``__shared__ T name[dims];`` a function-local static (fibers of one block share it, blocks
  run one after another) that the first thread of every block to reach it fills with NaN
  bytes.

Every rewrite keeps the line breaks of what it replaces, so that compiler messages and the
emulation's reports (std::source_location) point at the original lines.
"""
import re

_DYNAMIC_SHARED = re.compile(r'extern\s+__shared__\s+([^;\[\]]+?)\s+(\w+)\s*\[\s*\]\s*;')
_STATIC_SHARED = re.compile(r'__shared__\s+([^;]+?)\s+(\w+)\s*((?:\[[^\];]*\]\s*)*);')
_IDENTIFIER = re.compile(r'[\w:]')


def _keep_lines(original, replacement):
    return replacement + '\n' * (original.count('\n') - replacement.count('\n'))


def _matching(text, start, opening, closing):
    """Index just past the bracket that closes text[start] (an `opening`)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f'unbalanced {opening}{closing} from offset {start}')


def _kernel_start(text, end):
    """Start of the kernel name (qualified, optionally with template arguments) that ends
    just before text[end]."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == '>':
        depth = 0
        while True:
            i -= 1
            depth += {'>': 1, '<': -1}.get(text[i], 0)
            if depth == 0:
                break
    while i > 0 and _IDENTIFIER.match(text[i - 1]):
        i -= 1
    return i


def _rewrite_launches(text):
    out, pos = [], 0
    while (open_at := text.find('<<<', pos)) >= 0:
        close_at = text.find('>>>', open_at)
        args_open = close_at + 3
        while text[args_open].isspace():
            args_open += 1
        if close_at < 0 or text[args_open] != '(':
            raise ValueError(f'launch at offset {open_at} is not kernel<<<...>>>(...)')
        args_close = _matching(text, args_open, '(', ')')
        name_start = _kernel_start(text, open_at)
        name = text[name_start:open_at].strip()
        config = text[open_at + 3:close_at]
        args = text[args_open + 1:args_close - 1]
        launch = (f'::emu::launch(::emu::Config({config}), '
                  f'[](auto... a) {{ {name}(a...); }}{", " if args.strip() else ""}{args})')
        out += [text[pos:name_start], _keep_lines(text[name_start:args_close], launch)]
        pos = args_close
    return ''.join(out) + text[pos:]


def _dynamic_shared(match):
    element, name = match.groups()
    return _keep_lines(match[0], f'{element}* const {name} = ::emu::dynamic_shared<{element}>();')


def _static_shared(match):
    element, name, dims = match.groups()
    return _keep_lines(match[0], f'static {element} {name}{dims.strip()}; '
                                 f'static uint64_t {name}_epoch_; '
                                 f'::emu::enter_shared({name}, {name}_epoch_);')


def rewrite(source):
    """`source` (the text of a .cu file) as C++ for the emulation.

    Raises:
        ValueError: for a launch or __shared__ declaration of another form.
    """
    text = _rewrite_launches(source)
    text = _DYNAMIC_SHARED.sub(_dynamic_shared, text)
    text = _STATIC_SHARED.sub(_static_shared, text)
    for construct in ('<<<', '__shared__'):
        if construct in text:
            line = text[:text.index(construct)].count('\n') + 1
            raise ValueError(f'line {line}: {construct} in a form the emulation does not '
                             'rewrite')
    return text
