"""What tests share: record factories, waits, fixtures and real local servers. Test modules import from here and
never from one another (tests/unit/test_suite_layout.py checks it)."""
