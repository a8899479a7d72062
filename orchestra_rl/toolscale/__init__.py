"""ToolScale synthesis (`orchestra-rl data synthesize`, docs/toolscale.md): a model designs tool domains and
verifiable tasks (stages.py, over llm.py's cached endpoint), every task is proven by executing its golden actions
(replay.py), and the output is domain folders the environment role trains and evaluates on (pipeline.py)."""
