"""The whole wire protocol: messages, the typed trail, states and reasons."""
