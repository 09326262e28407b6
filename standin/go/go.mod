module toolgate/standin-go

go 1.19
