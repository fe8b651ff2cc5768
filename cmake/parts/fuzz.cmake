# fuzz: the unit test of the pure parsers the fuzz targets drive.
chatd_unit_test(test_parse)
