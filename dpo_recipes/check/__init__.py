"""Pre-flight: settings TRL or PEFT would ignore, risky values, and a memory and time estimate, before model work."""
