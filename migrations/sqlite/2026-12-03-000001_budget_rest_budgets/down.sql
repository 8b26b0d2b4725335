DROP TABLE rest_budgets;
