package postgres

// MigrationNames lists the embedded migrations, for tests.
func MigrationNames() ([]string, error) {
	ms, err := loadMigrations()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range ms.Sorted() {
		names = append(names, m.Name)
	}
	return names, nil
}
