"""The interactive shell, `llmos shell`: one kernel for the session, job control, live views."""
