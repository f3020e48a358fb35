# Thin wrappers around scripts/dev.sh (see `scripts/dev.sh help`).
DEV := scripts/dev.sh

.PHONY: stack-up stack-down stack-status demo test bench build

stack-up stack-down stack-status demo test bench build:
	$(DEV) $@
