module meshgate/bench/streamload

go 1.19
