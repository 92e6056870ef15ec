"""Pure, socket-free decision logic: rules, junk, attribution, content."""
