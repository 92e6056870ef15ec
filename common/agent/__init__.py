"""``gitsieve agent -- CMD`` and ``gitsieve mark --system``: exact, unprivileged attribution
of an autonomous process's changes to the workspace.

The wrapper (:mod:`.wrapper`) runs CMD under a seccomp filter whose user notifications
(:mod:`.seccomp`) tell it, before each call proceeds, every name CMD or a descendant
creates, opens for writing, truncates, renames, links, chmods or deletes in the
workspace (:mod:`.decode`, :mod:`.resolve`).  It appends them to a journal in the
runtime directory (:mod:`.journal`), which the L2 workers read
(:mod:`gitsieve.common.judge.attribution.journal`).  :mod:`.mark` appends the
declarations of agents that report their own edits.  :mod:`.command` is what the
``gitsieve agent`` and ``gitsieve mark`` subcommands run.
"""
