"""The actor runtime: base loop and dispatch, the stage credit protocol, control."""
