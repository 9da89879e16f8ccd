module credvend.test/pause

go 1.24
