"""python -m core.synth --out DIR --n 200 --size 128 [--style hatched --trigger "..."] [--zip]"""

from .cli import main

main()
