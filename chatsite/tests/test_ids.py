"""chatsite.ids: version 4 UUIDs cut from a pool of the OS's random bytes."""

import os
import subprocess
import sys
import uuid

import pytest
from django.conf import settings

from chatsite import ids

pytestmark = pytest.mark.no_database


def test_ids_are_version_4_uuids_and_never_repeat_across_fills():
    made = [ids.uuid4() for _ in range(3 * ids._IDS_PER_FILL + 7)]
    assert len(set(made)) == len(made)
    assert {u.version for u in made} == {4}
    assert {u.variant for u in made} == {uuid.RFC_4122}
    # Parsed back from text, as the API and the database give them.
    assert all(uuid.UUID(str(u)) == u for u in made)


def test_one_read_of_the_os_random_source_serves_a_whole_pool(monkeypatch):
    reads: list[int] = []
    urandom = os.urandom

    def counted(size: int) -> bytes:
        reads.append(size)
        return urandom(size)

    monkeypatch.setattr(ids.os, "urandom", counted)
    ids._forget()
    for _ in range(2 * ids._IDS_PER_FILL):
        ids.uuid4()
    assert reads == [16 * ids._IDS_PER_FILL] * 2


# Run in a fresh interpreter: forking the test process (threads running) is unsafe.
FORK = """
import os, sys
from chatsite import ids
ids.uuid4()  # the pool now holds ids a copy of it would repeat
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.write(write, ids.uuid4().bytes)
    os._exit(0)
os.close(write)
from_child = os.read(read, 16)
os.waitpid(child, 0)
print(from_child.hex(), ids.uuid4().hex)
"""


def test_a_forked_child_draws_its_own_ids():
    done = subprocess.run(
        [sys.executable, "-c", FORK],
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    )
    from_child, parents_next = done.stdout.split()
    # The parent's next id is the one a copied pool would have given the child.
    assert from_child != parents_next
    assert uuid.UUID(from_child).version == 4


def test_request_ids_are_32_hex_digits():
    made = {ids.hex_id() for _ in range(100)}
    assert len(made) == 100
    assert all(len(m) == 32 and int(m, 16) >= 0 for m in made)
