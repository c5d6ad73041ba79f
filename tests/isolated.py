"""Runs a call in a forked child process, so that a crash (SIGSEGV), a hang or a blown
memory budget fails the test that made the call instead of killing the test run."""
import multiprocessing
import resource
import traceback
from typing import Any, Callable, Tuple

#: What a call may add to the child's address space (the issue's budget for a load).
MEMORY_BYTES = 4 * 2 ** 30


def _address_space() -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024
    return 0


def _child(call: Callable[[], Any], connection: Any, memory_bytes: int) -> None:
    limit = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        connection.send(('returned', call()))
    except BaseException as error:  # noqa: B902 (every outcome is reported to the parent)
        connection.send(('raised', f'{type(error).__module__}.{type(error).__name__}',
                         str(error)[:2000], traceback.format_exc()[-2000:]))


def run_isolated(call: Callable[[], Any], timeout: float = 60,
                 memory_bytes: int = MEMORY_BYTES) -> Tuple[str, ...]:
    """``call()`` in a forked child with ``memory_bytes`` more address space than it starts
    with. Returns ('returned', what it returned: picklable) or ('raised', exception type,
    message, traceback), or ('crashed', exit code) for a child that died, or ('hung',)
    for one still running after ``timeout`` seconds (then killed)."""
    context = multiprocessing.get_context('fork')
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(call, sender, memory_bytes))
    child.start()
    sender.close()
    if not receiver.poll(timeout):  # a child that died has closed the pipe: poll sees it
        child.kill()
        child.join()
        return ('hung',)
    try:
        outcome = receiver.recv()
    except EOFError:  # died before it reported
        child.join()
        return ('crashed', child.exitcode)
    child.join(timeout)
    return outcome
