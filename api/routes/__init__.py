"""One router per resource; api/main.py wires them."""
