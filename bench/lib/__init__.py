"""Helpers the benchmark scripts share (bench/ on sys.path, then `from lib.step_speed import run_speed`):
the Phi-4-mini-shaped model and its run config (phi4_mini_run), GPU rows and their memory and matmul rate
(gpu_runs), synthetic chats, the guide's recipe, TRL's side of the peer benchmark (trl_peer), the
capped-allocator runner (capped_run), step-speed reading, FLOP counting and table printing. The scripts in
bench/ are named by the claim they measure."""
