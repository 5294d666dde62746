"""The silicon oracle: run x86-64 snippets natively and on kvmpy, and compare them.

Modules: ``build`` (compile the trampoline), ``native`` (run a snippet natively),
``asm`` (batch-assemble Intel-syntax snippets with GNU as), ``flagspec`` (which flags each
instruction leaves undefined), ``diff`` (run both sides and compare), ``fuzz`` (random
valid instruction sequences, shrinking, and a command-line entry).
"""
