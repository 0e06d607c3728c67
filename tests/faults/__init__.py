"""Fault injection (issue 7): colhead attacked on purpose, with real processes and real files.

    pytest tests/faults                          # reduced counts, < 2 min on 2 cores
    pytest tests/faults -m "slow or not slow" --fault-count 20   # the full counts
    python bench/faults.py                       # the same, and the table of figures

test_kill        kill -9 at seeded random moments (local and Ray engines), and on purpose in
                 each window of the writer; resume; equal to an uninterrupted run
test_corrupt     cache files truncated or overwritten at random: a clear error, or intact
test_disk_full   RLIMIT_FSIZE on the writer, and a real full tmpfs
test_race        writers racing on one cache; readers during a write
test_bad_inputs  a bad-input corpus (images, file-system oddities, CSV lists), end to end
test_properties  hypothesis: interrupted writes = one uninterrupted write
test_security    no pickles anywhere, bounded and defensively parsed metadata

The commands run in children of a fork server (_zygote.py) that imported colhead once, so a
kill point costs milliseconds instead of the ~5 s torch and timm take to import.
"""
