"""gitsieve helper: the root daemon that serves exact attribution to unprivileged gitsieve
instances (server), its wire protocol, and the client L2 uses."""
