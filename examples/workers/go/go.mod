module handover.example/go-worker

// The standard library only: nothing to download. Debian 12's golang-go is Go 1.19.
go 1.19
