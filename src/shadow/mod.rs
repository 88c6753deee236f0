//! Shadowing (DESIGN.md "Shadow: the same question to the gray version, answers paired"): the
//! pure parts. Work in progress for issue 18; nothing here is reachable from a config yet.
