package cache

import (
	"sync"
	"testing"
)

func TestBudgetRefusesOverLimit(t *testing.T) {
	b := NewBudget(100)
	if !b.Reserve(60) || !b.Reserve(40) {
		t.Fatal("reservations within the limit were refused")
	}
	if b.Reserve(1) {
		t.Fatal("a reservation over the limit was granted")
	}
	b.Release(40)
	if !b.Reserve(30) {
		t.Fatal("released bytes were not reusable")
	}
	st := b.Stats()
	if st.InUse != 90 || st.HighWater != 100 || st.Refused != 1 || st.Limit != 100 {
		t.Fatalf("stats = %+v; want 90 in use, high water 100, 1 refused", st)
	}
}

func TestBudgetZeroRefusesEverything(t *testing.T) {
	b := NewBudget(0)
	if b.Reserve(1) {
		t.Fatal("a zero budget granted a reservation")
	}
	if !b.Reserve(0) {
		t.Fatal("an empty reservation was refused")
	}
}

func TestNilBudgetHasNoLimit(t *testing.T) {
	var b *Budget
	if !b.Reserve(1 << 40) {
		t.Fatal("a nil budget refused")
	}
	b.Release(1 << 40)
	if st := b.Stats(); st.Limit != -1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestBudgetHighWaterUnderConcurrency(t *testing.T) {
	b := NewBudget(1000)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 1000 {
				if b.Reserve(300) {
					b.Release(300)
				}
			}
		})
	}
	wg.Wait()
	st := b.Stats()
	if st.HighWater > 1000 || st.HighWater < 300 || st.InUse != 0 {
		t.Fatalf("stats = %+v; want a high water within (300, 1000) and nothing in use", st)
	}
}
