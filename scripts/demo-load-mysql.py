"""Prints the demo's live write load for MariaDB as SQL on stdout, to pipe into
one `mariadb` client session: about RATE transactions a second for SECONDS
seconds, each a new order with two items, a status change, and now and then a
cancellation (the same mix as demo-load.sql for pgbench)."""
import random
import sys

seconds, rate = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(7)
for _ in range(seconds * rate):
    customer, product = rng.randint(1, 5000), rng.randint(1, 500)
    other, coin = rng.randint(1, 50000), rng.randint(1, 10)
    print(f"""START TRANSACTION;
INSERT INTO orders (customer_id, status) VALUES ({customer}, 'new');
SET @o = LAST_INSERT_ID();
INSERT INTO order_items (order_id, line, product_id, quantity, unit_price)
  SELECT @o, seq, {product}, seq, price FROM products JOIN seq_1_to_2 WHERE id = {product};
UPDATE orders SET total = (SELECT SUM(quantity * unit_price) FROM order_items WHERE order_id = @o),
  updated_at = NOW(6) WHERE id = @o;
UPDATE orders SET status = 'shipped', updated_at = NOW(6) WHERE id = {other} AND status = 'paid';
DELETE FROM orders WHERE id = {other} AND {coin} = 1 AND status = 'new';
COMMIT;
DO SLEEP({1 / rate:.4f});""")
